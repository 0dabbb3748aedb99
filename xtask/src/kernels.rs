//! `cargo xtask kernels`: boots Debian's kernels 5.10, 6.1 and 6.12 under QEMU with a
//! small initramfs (static `steer`, test server and load generator, busybox), runs the
//! smoke suite `xtask/kernels/smoke.sh` in each and on the host, and prints the table
//! kernel × capability (also written to `target/kernels/kernels.md`).
//!
//! Layout: `fetch.rs` gets the kernels and the tools (apt, in a private configuration),
//! `initramfs.rs` writes the VMs' root filesystem, `vm.rs` runs QEMU and the host run,
//! `report.rs` turns the suite's `STEER-RESULT` lines into the table.

mod fetch;
mod initramfs;
mod report;
mod vm;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::{setup, util};
use report::Column;

/// Where the kernels, the initramfs images, the logs and the table go.
const DIR: &str = "target/kernels";

/// What the table file starts with.
const HEADING: &str = "# steer on other kernels\n\nWritten by `cargo xtask kernels`: the smoke suite \
    (xtask/kernels/smoke.sh) in a VM per Debian kernel, and on the host.\n\n";
/// The suite run inside every VM and on the host.
const SMOKE: &str = include_str!("../kernels/smoke.sh");
/// PID 1 of the VMs.
const INIT: &str = include_str!("../kernels/init.sh");

/// A Debian kernel to boot.
#[derive(Debug, Clone, Copy)]
pub struct Kernel {
    /// How `--only` and the table name it.
    pub label: &'static str,
    /// The Debian suite whose `linux-image-cloud-amd64` it is.
    pub suite: &'static str,
}

/// The kernels Debian's packages reach, oldest first.
pub const KERNELS: [Kernel; 3] = [
    Kernel { label: "5.10", suite: "bullseye" },
    Kernel { label: "6.1", suite: "bookworm" },
    Kernel { label: "6.12", suite: "bookworm-backports" },
];

/// How the VMs run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Accel {
    /// KVM if a probe boot under it works, else TCG.
    Auto,
    Kvm,
    /// Software emulation.
    Tcg,
}

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Only these columns (repeatable): 5.10, 6.1, 6.12, host
    #[arg(long = "only", value_name = "KERNEL", value_parser = ["5.10", "6.1", "6.12", "host"])]
    only: Vec<String>,
    /// KVM or software emulation (TCG)
    #[arg(long, value_enum, default_value_t = Accel::Auto)]
    accel: Accel,
    /// Bound on each run, boot to power-off
    #[arg(long, value_name = "S", default_value_t = 240)]
    timeout: u64,
}

impl Options {
    fn wants(&self, label: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == label)
    }
}

/// Every column, with the defaults, as `cargo xtask test` runs it: an error
/// when a run did not complete (an expected ✗ in the table is no error).
pub fn run_all() -> Result<()> {
    let options = Options { only: Vec::new(), accel: Accel::Auto, timeout: 240 };
    if run(&options)? == ExitCode::SUCCESS {
        Ok(())
    } else {
        bail!("the kernel smoke suite did not complete on every kernel (see above)")
    }
}

pub fn run(options: &Options) -> Result<ExitCode> {
    if !setup::is_root()? {
        bail!("cargo xtask kernels needs root: apt-get, and the host run's network namespace and bpffs");
    }
    let root = util::workspace_root();
    let dir = root.join(DIR);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    fetch::tools(&dir)?;
    let bins = steer_harness::image::build_static(
        root,
        &[("steer", "steer"), ("steer-tests", "steer-testserver"), ("steer-tests", "steer-load")],
        &mut |line| println!("{line}"),
    )?;
    let mut columns = Vec::new();
    let (mut apt, mut accel) = (None, None);
    for kernel in KERNELS.iter().filter(|k| options.wants(k.label)) {
        columns.push(boot(kernel, &dir, &bins, options, &mut apt, &mut accel));
    }
    if options.wants("host") {
        columns.push(host(&dir, &bins, Duration::from_secs(options.timeout)));
    }
    let table = format!("{HEADING}{}", report::render(&columns));
    println!("\n{table}");
    let file = dir.join("kernels.md");
    std::fs::write(&file, &table).with_context(|| format!("writing {}", file.display()))?;
    println!("kernels: the table is in {}", file.display());
    let broken: Vec<_> = columns.iter().filter(|c| c.failure.is_some()).map(|c| c.label.clone()).collect();
    if broken.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("error: the suite did not complete on {}", broken.join(", "));
        Ok(ExitCode::FAILURE)
    }
}

/// Fetches `kernel`, builds its initramfs and runs the suite in a VM; a failure of any
/// step is the column's, so the other kernels still run.
fn boot(
    kernel: &Kernel,
    dir: &Path,
    bins: &[PathBuf],
    options: &Options,
    apt: &mut Option<fetch::Apt>,
    accel: &mut Option<vm::Accel>,
) -> Column {
    let started = Instant::now();
    let mut attempt = || -> Result<(fetch::Fetched, vm::Run)> {
        let fetched = fetch::kernel(kernel, dir, apt)?;
        let image = initramfs::build(&fetched, bins, INIT, SMOKE)?;
        let accel = match accel {
            Some(a) => *a,
            None => *accel.insert(vm::choose_accel(options.accel, &fetched.vmlinuz, &image)?),
        };
        let run = vm::boot(kernel.label, &fetched, &image, accel, Duration::from_secs(options.timeout))?;
        Ok((fetched, run))
    };
    match attempt() {
        Ok((fetched, run)) => Column::from_run(kernel.label, Some(fetched.describe(kernel)), run),
        Err(e) => {
            eprintln!("kernels: {}: {e:#}", kernel.label);
            Column::failed(kernel.label, format!("{e:#}"), started.elapsed())
        }
    }
}

/// The suite on the host, in a network namespace of its own.
fn host(dir: &Path, bins: &[PathBuf], timeout: Duration) -> Column {
    let started = Instant::now();
    match vm::host(dir, bins, SMOKE, timeout) {
        Ok(run) => Column::from_run("host", None, run),
        Err(e) => {
            eprintln!("kernels: host: {e:#}");
            Column::failed("host", format!("{e:#}"), started.elapsed())
        }
    }
}
