//! Where the daemon's listener events come from: the [`EventSource`] trait, and
//! choosing one: raw tracepoints (no tracefs), classic tracepoints (tracefs,
//! mounted if need be), or polling, in that order under `auto`, saying which
//! and why.
use std::{collections::BTreeSet, time::Duration};

use super::{Event, Filter, poll::Poller, tracepoint::Watcher};

/// A stream of listener events.
pub trait EventSource {
    /// Waits up to `timeout` for events, then appends every event there is to `out`.
    fn wait(&mut self, timeout: Duration, out: &mut Vec<Event>);
    /// Makes `pids` the processes whose forks are reported, where the source can.
    fn watch_forks(&mut self, _pids: &BTreeSet<u32>) {}
    /// Whether this source polls (it then runs at `--nice`, never real-time).
    fn is_polling(&self) -> bool {
        false
    }
}

/// Where listener events come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Source {
    /// The first that works: raw tracepoints, then tracefs tracepoints, then polling.
    Auto,
    /// Raw tracepoints, with field offsets from the kernel's BTF; needs no tracefs.
    Raw,
    /// Classic tracepoints through tracefs (mounted if absent and allowed).
    Tracepoint,
    /// Poll sock_diag and /proc.
    Poll,
}

/// The source in use and why: the daemon's first log line and `steer check`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Chosen {
    /// `raw_tracepoint`, `tracepoint` or `poll`.
    pub source: &'static str,
    /// Why this one, in one sentence.
    pub reason: String,
    /// Whether forks of promoted processes are reported (tracepoint sources only).
    pub forks: bool,
}

const RAW_REASON: &str =
    "raw tracepoints attached by name, field offsets from /sys/kernel/btf/vmlinux; no tracefs needed";

/// Opens the source `wanted` asks for. `Raw` and `Tracepoint` fail when they
/// cannot load; `Auto` falls back, and its reason names each cause.
pub fn open(
    wanted: Source,
    filter: &Filter,
    interval: Duration,
) -> anyhow::Result<(Box<dyn EventSource>, Chosen)> {
    let (watcher, chosen) = open_watcher(wanted, &filter.ports, &filter.netns)?;
    let source: Box<dyn EventSource> = match watcher {
        Some(w) => Box::new(WithUdp { watcher: w, udp: Poller::udp(filter.clone(), interval.max(UDP_POLL)) }),
        None => Box::new(Poller::new(filter.clone(), interval)),
    };
    Ok((source, chosen))
}

/// How often, at least, a tracepoint source's UDP poller looks for new UDP
/// sockets: the kernel has no tracepoint at a UDP bind.
const UDP_POLL: Duration = Duration::from_millis(250);

/// A tracepoint watcher for TCP listeners, with a poller beside it for UDP
/// sockets, which bind without a state change to trace.
struct WithUdp {
    watcher: Watcher,
    udp: Poller,
}

impl EventSource for WithUdp {
    fn wait(&mut self, timeout: Duration, out: &mut Vec<Event>) {
        self.watcher.wait(timeout.min(self.udp.until_due()), out);
        self.udp.poll_if_due(out);
    }

    fn watch_forks(&mut self, pids: &BTreeSet<u32>) {
        self.watcher.watch_forks(pids);
    }
}

fn open_watcher(wanted: Source, ports: &[u16], netns: &[u64]) -> anyhow::Result<(Option<Watcher>, Chosen)> {
    let chosen = |w: &Watcher, reason: String| Chosen {
        source: w.attach().as_str(),
        reason,
        forks: w.reports_forks(),
    };
    match wanted {
        Source::Poll => {
            Ok((None, Chosen { source: "poll", reason: "--source poll".to_owned(), forks: false }))
        }
        Source::Raw => {
            let w = Watcher::start_raw(ports, netns)?;
            let c = chosen(&w, RAW_REASON.to_owned());
            Ok((Some(w), c))
        }
        Source::Tracepoint => {
            let w = Watcher::start_tracefs(true, ports)?;
            let c = chosen(&w, tracefs_reason(&w, "--source tracepoint"));
            Ok((Some(w), c))
        }
        Source::Auto => {
            let raw_err = match Watcher::start_raw(ports, netns) {
                Ok(w) => {
                    let c = chosen(&w, RAW_REASON.to_owned());
                    return Ok((Some(w), c));
                }
                Err(e) => format!("{e:#}"),
            };
            let tracefs_err = match Watcher::start_tracefs(true, ports) {
                Ok(w) => {
                    let c =
                        chosen(&w, tracefs_reason(&w, &format!("raw tracepoints unavailable ({raw_err})")));
                    return Ok((Some(w), c));
                }
                Err(e) => format!("{e:#}"),
            };
            let reason = format!(
                "raw tracepoints unavailable ({raw_err}); tracefs tracepoints unavailable ({tracefs_err})"
            );
            Ok((None, Chosen { source: "poll", reason, forks: false }))
        }
    }
}

fn tracefs_reason(w: &Watcher, why: &str) -> String {
    if w.mounted_tracefs() {
        format!("{why}; mounted tracefs at /sys/kernel/tracing, unmounted when the daemon stops")
    } else {
        why.to_owned()
    }
}

/// What `open(Source::Auto)` would choose here, for `steer check`: loads and
/// attaches the watcher for a moment, but mounts nothing.
#[must_use]
pub fn probe() -> Chosen {
    let raw_err = match Watcher::start_raw(&[], &[]) {
        Ok(w) => {
            return Chosen {
                source: "raw_tracepoint",
                reason: RAW_REASON.to_owned(),
                forks: w.reports_forks(),
            };
        }
        Err(e) => format!("{e:#}"),
    };
    match Watcher::start_tracefs(false, &[]) {
        Ok(w) => Chosen {
            source: "tracepoint",
            reason: format!("raw tracepoints unavailable ({raw_err})"),
            forks: w.reports_forks(),
        },
        Err(e) => Chosen {
            source: "poll",
            reason: format!(
                "raw tracepoints unavailable ({raw_err}); tracefs tracepoints unavailable ({e:#}); the daemon mounts tracefs if it has CAP_SYS_ADMIN, else it polls"
            ),
            forks: false,
        },
    }
}
