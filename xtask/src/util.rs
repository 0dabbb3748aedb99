//! Running external commands: echoed before they run, failures reported with their status;
//! and the unit conversions the reports share.

use std::{
    env,
    ffi::{OsStr, OsString},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// The workspace root (the directory holding the top `Cargo.toml`).
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask/ lives inside the workspace")
}

/// Where `cargo install` puts binaries: `$CARGO_HOME/bin`, else `~/.cargo/bin`.
pub fn cargo_bin_dir() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
        .join("bin")
}

/// `PATH` with the cargo bin directory appended when it is missing, so that tools
/// installed by `cargo install` (bpf-linker) are found by every command we start.
pub fn search_path() -> OsString {
    let bin = cargo_bin_dir();
    let current = env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = env::split_paths(&current).collect();
    if !dirs.contains(&bin) {
        dirs.push(bin);
    }
    env::join_paths(dirs).unwrap_or(current)
}

/// A command for `program` with the search path above and no standard input: nothing
/// we run may wait for a terminal.
pub fn cmd(program: impl AsRef<OsStr>) -> Command {
    let mut command = Command::new(program);
    command.env("PATH", search_path()).stdin(Stdio::null());
    command
}

/// Shell-like text of a command, with the environment changes it carries (not `PATH`).
pub fn display(command: &Command) -> String {
    let mut unset = Vec::new();
    let mut set = Vec::new();
    for (key, value) in command.get_envs() {
        let key = key.to_string_lossy();
        match value {
            _ if key == "PATH" => {}
            Some(value) => set.push(format!("{key}={}", quote(&value.to_string_lossy()))),
            None => unset.push(format!("-u {key}")),
        }
    }
    let mut words = Vec::new();
    if !unset.is_empty() {
        words.push("env".to_owned());
        words.append(&mut unset);
    }
    words.append(&mut set);
    words.push(quote(&command.get_program().to_string_lossy()));
    words.extend(command.get_args().map(|arg| quote(&arg.to_string_lossy())));
    words.join(" ")
}

fn quote(word: &str) -> String {
    let plain =
        !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:+,@%".contains(c));
    if plain { word.to_owned() } else { format!("'{}'", word.replace('\'', r"'\''")) }
}

/// Echoes the command line, runs it with inherited output, and fails unless it exits 0.
pub fn run(command: &mut Command) -> Result<()> {
    let line = display(command);
    println!("$ {line}");
    let status = command.status().with_context(|| format!("could not start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Runs the command quietly and returns its standard output; fails unless it exits 0.
pub fn output(command: &mut Command) -> Result<String> {
    let line = display(command);
    let out = command.output().with_context(|| format!("could not start `{line}`"))?;
    if !out.status.success() {
        bail!("`{line}` failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Like [`output`], but `None` when the program is missing or exits non-zero.
pub fn probe(command: &mut Command) -> Option<String> {
    output(command).ok()
}

/// Microseconds as milliseconds, for printing.
#[expect(clippy::cast_precision_loss, reason = "microseconds shown as milliseconds")]
pub fn ms(us: u64) -> f64 {
    us as f64 / 1e3
}

/// KiB as MiB, for printing.
#[expect(clippy::cast_precision_loss, reason = "KiB shown as MiB")]
pub fn mib(kb: u64) -> f64 {
    kb as f64 / 1024.0
}
