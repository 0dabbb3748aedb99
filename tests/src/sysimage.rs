//! A Debian root filesystem with systemd as init and Debian's HAProxy, for running the
//! shipped unit (`deploy/systemd/steer.service`) under a real systemd. No registry is
//! reachable: `debootstrap` builds it from the host's own suite (so the host's `steer`
//! binary runs in it), `docker import` turns it into an image, and that image goes into
//! containerd, whose `ctr` can grant CAP_BPF and CAP_PERFMON (Docker 20.10 cannot).
//!
//! Built once: the containerd image is the cache, named by the package list, so a change
//! of that list builds it again. The first build takes about 5 minutes on 2 busy cores.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail, ensure};

/// What the root filesystem holds beyond debootstrap's minimal base.
pub const PACKAGES: &str = "systemd,systemd-sysv,haproxy";
/// The image: docker's name for it, and containerd's.
pub const SYSTEMD_IMAGE: &str = "steer-systemd:dev";
pub const SYSTEMD_IMAGE_REF: &str = "docker.io/library/steer-systemd:dev";
/// Where containerd listens: its own service, or the one Docker runs.
pub const CTR_SOCKETS: [&str; 2] =
    ["/run/containerd/containerd.sock", "/run/docker/containerd/containerd.sock"];
/// The containerd namespace of the tests' images and containers.
pub const CTR_NAMESPACE: &str = "steer-test";
/// The label that names the package list an image was built with.
const LABEL: &str = "steer.packages";

/// `ctr` against the first containerd that answers.
#[derive(Debug, Clone)]
pub struct Ctr {
    socket: &'static str,
}

impl Ctr {
    /// # Errors
    ///
    /// When no containerd answers (the reason, in one sentence).
    pub fn find() -> Result<Ctr, String> {
        for socket in CTR_SOCKETS {
            if Path::new(socket).exists() {
                let ctr = Ctr { socket };
                if ctr.command().arg("version").output().is_ok_and(|o| o.status.success()) {
                    return Ok(ctr);
                }
            }
        }
        Err(format!("no containerd answers at {}", CTR_SOCKETS.join(" or ")))
    }

    /// `timeout 120 ctr --address SOCKET --namespace steer-test`, stdin closed.
    #[must_use]
    pub fn command(&self) -> Command {
        let mut cmd = Command::new("timeout");
        cmd.args(["120", "ctr", "--address", self.socket, "--namespace", CTR_NAMESPACE]).stdin(Stdio::null());
        cmd
    }

    /// Runs `ctr ARGS...` and returns its stdout.
    ///
    /// # Errors
    ///
    /// When it cannot start or exits non-zero.
    pub fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.command().args(args).output().context("running ctr")?;
        ensure!(out.status.success(), "ctr {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// Makes sure containerd holds [`SYSTEMD_IMAGE_REF`] built from [`PACKAGES`]; builds and
/// imports it when missing. `work` is a scratch directory for the root filesystem.
///
/// # Errors
///
/// When debootstrap, docker or ctr fails.
pub fn ensure(ctr: &Ctr, work: &Path) -> anyhow::Result<()> {
    let images = ctr.run(&["images", "ls"])?;
    let wanted = format!("{LABEL}={PACKAGES}");
    if images.lines().any(|l| l.starts_with(SYSTEMD_IMAGE_REF) && l.contains(&wanted)) {
        return Ok(());
    }
    let rootfs = work.join("systemd-rootfs");
    let _ = std::fs::remove_dir_all(&rootfs);
    let suite = host_suite()?;
    let status = Command::new("debootstrap")
        .args(["--variant=minbase", &format!("--include={PACKAGES}"), &suite])
        .arg(&rootfs)
        .arg("http://deb.debian.org/debian")
        .stdout(Stdio::null())
        .status()
        .context("running debootstrap (apt-get install debootstrap)")?;
    ensure!(status.success(), "debootstrap {suite} failed ({status})");
    // tar | docker import | docker save | ctr images import, with the label; containerd's
    // copy is the cache, so Docker's is removed.
    let script = format!(
        "set -e -o pipefail; tar -C {root} -c . | docker import -c 'LABEL {LABEL}={PACKAGES}' -c 'CMD [\"/sbin/init\"]' - {SYSTEMD_IMAGE} >/dev/null; \
         docker save {SYSTEMD_IMAGE} | timeout 300 ctr --address {socket} --namespace {CTR_NAMESPACE} images import --snapshotter native - >/dev/null; \
         ctr --address {socket} --namespace {CTR_NAMESPACE} images label {SYSTEMD_IMAGE_REF} {LABEL}={PACKAGES} >/dev/null; \
         docker rmi {SYSTEMD_IMAGE} >/dev/null",
        root = rootfs.display(),
        socket = ctr.socket,
    );
    let status = Command::new("bash").args(["-c", &script]).status().context("running bash")?;
    let _ = std::fs::remove_dir_all(&rootfs);
    if !status.success() {
        bail!("importing the systemd image failed ({status})");
    }
    Ok(())
}

/// The host's Debian suite (`VERSION_CODENAME` in /etc/os-release), e.g. `bookworm`.
fn host_suite() -> anyhow::Result<String> {
    let text = std::fs::read_to_string("/etc/os-release").context("reading /etc/os-release")?;
    text.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|s| s.trim_matches('"').to_owned())
        .filter(|s| !s.is_empty())
        .context("no VERSION_CODENAME in /etc/os-release")
}
