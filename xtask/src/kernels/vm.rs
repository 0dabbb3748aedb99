//! Running the smoke suite: in QEMU (console on ttyS0, printed as it comes; results on
//! ttyS1, a file), bounded by a timeout; or on the host, in a network namespace of its own.

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

use super::fetch::{BUSYBOX, Fetched};
use crate::util::{self, cmd};

/// How long a probe boot may take under KVM (it takes about 3 s under TCG).
const PROBE_TIMEOUT: Duration = Duration::from_secs(20);
/// The host run's state directory, apart from anyone else's.
const HOST_STATE_DIR: &str = "/sys/fs/bpf/steer-kernels";

/// How QEMU runs a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    fn args(self) -> [&'static str; 4] {
        match self {
            Accel::Kvm => ["-accel", "kvm", "-cpu", "host"],
            Accel::Tcg => ["-accel", "tcg", "-cpu", "max"],
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "KVM",
            Accel::Tcg => "TCG",
        }
    }
}

/// What a run of the suite left.
#[derive(Debug)]
pub struct Run {
    /// The `STEER-RESULT` lines.
    pub results: String,
    pub elapsed: Duration,
    /// `None` on the host.
    pub accel: Option<Accel>,
    /// Why the run ended before the suite's last line, if it did.
    pub failure: Option<String>,
}

/// The accelerator `wanted` names; under `auto`, KVM if `/dev/kvm` opens and a probe boot
/// (init powers off at once) completes under it, else TCG.
pub fn choose_accel(wanted: super::Accel, vmlinuz: &Path, initramfs: &Path) -> Result<Accel> {
    match wanted {
        super::Accel::Kvm => return Ok(Accel::Kvm),
        super::Accel::Tcg => return Ok(Accel::Tcg),
        super::Accel::Auto => {}
    }
    if let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        println!("kernels: TCG (software emulation): /dev/kvm does not open: {e}");
        return Ok(Accel::Tcg);
    }
    let dir = initramfs.parent().unwrap_or(Path::new("."));
    let results = dir.join("probe-results.txt");
    let log = dir.join("probe-console.log");
    let mut child = qemu(Accel::Kvm, vmlinuz, initramfs, "steer.probe", &results, &log)?;
    let stdout = child.stdout.take().context("QEMU's stdout")?;
    let echo = std::thread::spawn(move || echo_console(stdout, "  [kvm probe] ", &log));
    let status = wait(&mut child, PROBE_TIMEOUT)?;
    let _ = echo.join();
    let ok = std::fs::read_to_string(&results).is_ok_and(|r| r.contains("STEER-RESULT probe=ok"));
    if ok {
        println!("kernels: KVM: a probe boot under it completed");
        Ok(Accel::Kvm)
    } else {
        let why =
            status.map_or_else(|| format!("no power-off within {PROBE_TIMEOUT:?}"), |s| format!("QEMU {s}"));
        println!(
            "kernels: TCG (software emulation): a probe boot under KVM failed ({why}; nested virtualisation?)"
        );
        Ok(Accel::Tcg)
    }
}

/// Boots `kernel` with `initramfs` and waits for power-off, up to `timeout`.
pub fn boot(label: &str, kernel: &Fetched, initramfs: &Path, accel: Accel, timeout: Duration) -> Result<Run> {
    let dir = initramfs.parent().unwrap_or(Path::new("."));
    let results = dir.join(format!("results-{}.txt", kernel.release));
    let log = dir.join(format!("console-{}.log", kernel.release));
    println!("kernels: {label}: booting {} under {} (at most {timeout:?})", kernel.release, accel.name());
    let started = Instant::now();
    let mut child = qemu(accel, &kernel.vmlinuz, initramfs, "", &results, &log)?;
    let stdout = child.stdout.take().context("QEMU's stdout")?;
    let prefix = format!("  [{label}] ");
    let echo = std::thread::spawn(move || echo_console(stdout, &prefix, &log));
    let status = wait(&mut child, timeout)?;
    let _ = echo.join();
    let elapsed = started.elapsed();
    let results = std::fs::read_to_string(&results).unwrap_or_default().replace('\r', "");
    let failure = match status {
        None => Some(format!("timed out after {timeout:?}")),
        Some(_) if !results.contains("STEER-RESULT done=1") => {
            Some(format!("the VM powered off before the suite ended (console: {})", dir.display()))
        }
        Some(_) => None,
    };
    println!("kernels: {label}: {:.0} s", elapsed.as_secs_f64());
    Ok(Run { results, elapsed, accel: Some(accel), failure })
}

fn qemu(
    accel: Accel,
    vmlinuz: &Path,
    initramfs: &Path,
    extra: &str,
    results: &Path,
    log: &Path,
) -> Result<Child> {
    let _ = std::fs::remove_file(results);
    let mut command = cmd("qemu-system-x86_64");
    command
        .args(accel.args())
        .args(["-m", "1024", "-smp", "2", "-nodefaults", "-no-reboot", "-display", "none"])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initramfs)
        .args(["-append", &format!("console=ttyS0 quiet panic=-1 {extra}")])
        .args(["-serial", "stdio", "-serial", &format!("file:{}", results.display())])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    println!("$ {}", util::display(&command));
    if extra.is_empty() {
        let _ = std::fs::remove_file(log);
    }
    command.spawn().context("could not start qemu-system-x86_64")
}

/// Copies the console to `log` and prints the suite's progress and the kernel's alarms.
fn echo_console(stdout: impl std::io::Read, prefix: &str, log: &Path) {
    let mut file = std::fs::File::create(log).ok();
    for line in BufReader::new(stdout).split(b'\n').map_while(Result::ok) {
        let text = String::from_utf8_lossy(&line);
        // The firmware's terminal codes, and carriage returns.
        let text: String = text.chars().filter(|c| !c.is_control() || *c == '\t').collect();
        if let Some(file) = file.as_mut() {
            let _ = writeln!(file, "{text}");
        }
        let alarm = ["panic", "BUG", "Oops", "WARNING", "init:"].iter().any(|w| text.contains(w));
        if text.starts_with("smoke:") || alarm {
            println!("{prefix}{text}");
        }
    }
}

/// Waits for `child` up to `timeout`; kills it then. `None` when it had to be killed.
fn wait(child: &mut Child, timeout: Duration) -> Result<Option<std::process::ExitStatus>> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = child.kill();
    let _ = child.wait();
    Ok(None)
}

/// The suite on the host: busybox's applets first on `PATH`, in a network namespace of
/// its own (`unshare -n`), with a state directory of its own, removed afterwards.
pub fn host(dir: &Path, bins: &[PathBuf], smoke: &str, timeout: Duration) -> Result<Run> {
    let home = dir.join("host");
    let applets = home.join("bin");
    let _ = std::fs::remove_dir_all(&home);
    std::fs::create_dir_all(&applets).with_context(|| format!("creating {}", applets.display()))?;
    util::run(cmd(BUSYBOX).arg("--install").arg("-s").arg(&applets))?;
    let script = home.join("smoke.sh");
    std::fs::write(&script, smoke)?;
    let results = home.join("results.txt");
    let bin_dir = bins.first().and_then(|b| b.parent()).context("no binaries")?;
    let path = std::env::join_paths(
        std::iter::once(applets.clone()).chain(std::env::split_paths(&util::search_path())),
    )?;
    let _ = std::fs::remove_dir_all(HOST_STATE_DIR);
    let release = util::output(cmd("uname").arg("-r"))?;
    println!("kernels: host: {} in a network namespace of its own", release.trim());
    let started = Instant::now();
    let mut command = Command::new("unshare");
    command
        .args(["-n", "--"])
        .arg(BUSYBOX)
        .arg("sh")
        .arg(&script)
        .env("PATH", path)
        .env("STEER_BIN", bin_dir)
        .env("STEER_RESULTS", &results)
        .env("STEER_STATE_DIR", HOST_STATE_DIR)
        .env("SMOKE_TMP", home.join("tmp"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        // Its own process group, so that a timeout ends the servers it started too.
        .process_group(0);
    let mut child = command.spawn().context("could not start unshare -n")?;
    let stdout = child.stdout.take().context("the suite's stdout")?;
    let log = home.join("console.log");
    let echo = std::thread::spawn(move || echo_console(stdout, "  [host] ", &log));
    let status = wait(&mut child, timeout)?;
    if status.is_none()
        && let Ok(group) = libc::pid_t::try_from(child.id())
        && group > 0
    {
        // SAFETY: a plain syscall, on the process group created for the suite.
        unsafe { libc::kill(-group, libc::SIGKILL) };
    }
    let _ = echo.join();
    let _ = std::fs::remove_dir_all(HOST_STATE_DIR);
    // The suite's select-only reloads use a state directory of their own beside it.
    let _ = std::fs::remove_dir_all(format!("{HOST_STATE_DIR}-select"));
    let results = std::fs::read_to_string(&results).unwrap_or_default();
    let failure = match status {
        None => Some(format!("timed out after {timeout:?}")),
        Some(_) if !results.contains("STEER-RESULT done=1") => Some("the suite stopped early".to_owned()),
        Some(_) => None,
    };
    Ok(Run { results, elapsed: started.elapsed(), accel: None, failure })
}
