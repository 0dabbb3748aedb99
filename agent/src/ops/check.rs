//! `steer check`: can steering work here? Kernel, privileges, bpffs, a real
//! load of the program through the verifier, and the daemon's event source
//! (each loaded, then dropped: nothing is pinned, and nothing stays attached).
use std::path::Path;

use crate::{
    paths, preflight,
    state::{self, Mode, Wanted},
};

/// One line of the report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Item {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

/// Runs every check; the report says what to fix for each failed one.
/// `event_source` says which source the daemon would use here and why
/// (`daemon::source::probe`; the daemon is a layer above the commands).
#[must_use]
pub fn run(state_dir: &Path, event_source: impl FnOnce() -> String) -> Vec<Item> {
    let mut items = Vec::new();
    let kernel = preflight::kernel();
    items.push(match &kernel {
        Ok(release) => Item { name: "kernel", ok: true, detail: release.clone() },
        Err(e) => Item { name: "kernel", ok: false, detail: e.to_string() },
    });
    let wanted = Wanted::new(false);
    if kernel.is_ok() {
        items.push(mode_item(&wanted));
    }
    let privileges = preflight::privileges();
    items.push(match &privileges {
        Ok(()) => Item {
            name: "privileges",
            ok: true,
            detail: "CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN and CAP_SYS_PTRACE are effective".to_owned(),
        },
        Err(e) => Item { name: "privileges", ok: false, detail: e.to_string() },
    });
    let bpffs = bpffs_item(state_dir);
    items.push(bpffs);
    if kernel.is_ok() && privileges.is_ok() {
        items.push(match load_program(wanted.mode) {
            Ok(()) => Item {
                name: "program",
                ok: true,
                detail: match wanted.mode {
                    Mode::SelectOrMigrate => "the verifier accepts the sk_reuseport/migrate program",
                    Mode::SelectOnly => "the verifier accepts the sk_reuseport (select-only) program",
                }
                .to_owned(),
            },
            Err(e) => {
                Item { name: "program", ok: false, detail: format!("the kernel refuses the program: {e:#}") }
            }
        });
    }
    if privileges.is_ok() {
        // Always ok: the daemon polls when no tracepoint works; the detail says which.
        items.push(Item { name: "event source", ok: true, detail: event_source() });
    }
    let migrate = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req").unwrap_or_default();
    let effect = match wanted.mode {
        Mode::SelectOrMigrate => "steer migrates queued connections with or without it",
        Mode::SelectOnly => {
            "in select-only mode, 1 lets the kernel move a closing listener's queue to a random member, 0 resets it"
        }
    };
    items.push(Item { name: "tcp_migrate_req", ok: true, detail: format!("{} ({effect})", migrate.trim()) });
    items
}

fn bpffs_item(state_dir: &Path) -> Item {
    let mut probe = state_dir.to_path_buf();
    while !probe.exists() && probe.pop() {}
    if state::is_bpffs(&probe) {
        Item { name: "bpffs", ok: true, detail: format!("{} is on bpffs", probe.display()) }
    } else if state_dir.starts_with(paths::BPFFS_MOUNT) || probe == Path::new("/") {
        Item {
            name: "bpffs",
            ok: true,
            detail: format!("not mounted at {}; steer mounts it on first promote", paths::BPFFS_MOUNT),
        }
    } else {
        Item {
            name: "bpffs",
            ok: true,
            detail: format!(
                "{} is not on bpffs; steer mounts bpffs there on first promote if the directory is empty",
                state_dir.display()
            ),
        }
    }
}

/// Which mode the kernel allows: select+migrate on 5.14+, select-only before
/// (and with `--no-migrate` anywhere).
fn mode_item(wanted: &Wanted) -> Item {
    let detail = match wanted.mode {
        Mode::SelectOrMigrate => {
            "select+migrate: new connections, and a closing listener's queue moves to the promoted socket (--no-migrate for select-only)".to_owned()
        }
        Mode::SelectOnly => format!(
            "select-only: {}; new connections are steered, but a listener that closes with connections queued resets them (hand over with `steer reload`, which drains first)",
            wanted.reason
        ),
    };
    Item { name: "mode", ok: true, detail }
}

fn load_program(mode: Mode) -> anyhow::Result<()> {
    state::select::check_load(mode)?;
    Ok(())
}
