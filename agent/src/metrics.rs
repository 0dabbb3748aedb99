//! Prometheus metrics for `steer daemon --metrics ADDR`: the program's counters,
//! the sockets of each group, the daemon's own figures and the kernel's
//! request-migration counters, encoded by `prometheus-client` and served by [`serve`].
//!
//! Each scrape builds a fresh registry from a fresh [`Status`], so counters carry
//! the values read from the kernel maps instead of being incremented here.
use std::{
    collections::BTreeMap,
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use prometheus_client::{
    encoding::{EncodeLabelSet, text},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::{Registry, Unit},
};

use crate::ops::status::{Counters, Status};

mod format;
mod http;
mod lock;

pub use format::{Format, negotiate, prometheus_text};
pub use http::serve;

/// Where `steer daemon --metrics` listens when given no address of its own.
pub const DEFAULT_ADDR: &str = "127.0.0.1:9477";

/// The address of `--metrics`: `IP:PORT`, or a bare `PORT` on loopback
/// (`9477` is `127.0.0.1:9477`). Other hosts, or a pod's network, need an
/// address that reaches them, such as `0.0.0.0:9477`.
///
/// # Errors
/// When `arg` is neither a socket address nor a port number.
pub fn parse_addr(arg: &str) -> Result<std::net::SocketAddr, String> {
    if let Ok(port) = arg.parse::<u16>() {
        return Ok((std::net::Ipv4Addr::LOCALHOST, port).into());
    }
    arg.parse().map_err(|_| format!("{arg:?} is neither IP:PORT (e.g. 127.0.0.1:9477) nor a port"))
}

/// The rules a process can fail (`daemon::Mismatch::rule`), each exported
/// from 0.
pub const UNTRUSTED_RULES: [&str; 4] = ["user", "user_namespace", "exe", "cgroup"];

/// What the daemon counts itself.
#[derive(Debug)]
pub struct DaemonStats {
    /// When the daemon started; the uptime gauge counts from here.
    pub started: Instant,
    /// Promotions per group label (e.g. `127.0.0.1:8080`).
    promotions: Mutex<BTreeMap<String, u64>>,
    /// Refusals by a cap, per reason (`instances`, `groups`, `generations`).
    refusals: Mutex<BTreeMap<&'static str, u64>>,
    /// Listen events from processes that fail a rule the operator named,
    /// per rule (`filter::Mismatch::rule`).
    untrusted: Mutex<BTreeMap<&'static str, u64>>,
    /// Events read from the watcher's ring buffer: sockets that started
    /// listening, listeners that closed, and forks of watched processes.
    listen_events: AtomicU64,
    close_events: AtomicU64,
    fork_events: AtomicU64,
    lost_events: AtomicU64,
    /// Groups where a new generation was not ready within `--ready-timeout`.
    not_ready: AtomicU64,
    /// When the event loop last went round, in ms since [`Self::started`] plus
    /// one (0: not yet). It goes round at least every 200 ms.
    heartbeat_ms: AtomicU64,
}

/// `/healthz` fails when the event loop has not gone round for this long: it
/// wakes at least every 200 ms, and a promotion takes milliseconds, so only a
/// loop that is stuck (a lock that never comes, a hung system call) gets here.
pub const HEARTBEAT_STALE: Duration = Duration::from_secs(10);

/// What `/healthz` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// The event loop went round this long ago.
    Beating(Duration),
    /// The event loop has not started yet (adoption runs first).
    Starting,
    /// The event loop last went round this long ago, more than [`HEARTBEAT_STALE`].
    Stale(Duration),
}

/// Counts of watcher events, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventCounts {
    /// Sockets that started listening.
    pub listen: u64,
    /// Listeners that closed.
    pub close: u64,
    /// Forks of watched processes.
    pub fork: u64,
    /// Events the source lost (its ring buffer was full); each loss makes the
    /// daemon look at every matching group again.
    pub lost: u64,
}

impl DaemonStats {
    #[must_use]
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            promotions: Mutex::new(BTreeMap::new()),
            refusals: Mutex::new(BTreeMap::new()),
            untrusted: Mutex::new(BTreeMap::new()),
            listen_events: AtomicU64::new(0),
            close_events: AtomicU64::new(0),
            fork_events: AtomicU64::new(0),
            lost_events: AtomicU64::new(0),
            not_ready: AtomicU64::new(0),
            heartbeat_ms: AtomicU64::new(0),
        }
    }

    /// The event loop calls this each time it goes round.
    pub fn beat(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.heartbeat_ms.store(ms + 1, Ordering::Relaxed);
    }

    /// How long ago the event loop last went round, judged at `now`.
    #[must_use]
    pub fn health(&self, now: Instant) -> Health {
        let beat = self.heartbeat_ms.load(Ordering::Relaxed);
        if beat == 0 {
            return Health::Starting;
        }
        let at = self.started + Duration::from_millis(beat - 1);
        let age = now.saturating_duration_since(at);
        if age > HEARTBEAT_STALE { Health::Stale(age) } else { Health::Beating(age) }
    }

    /// Counts events read from the ring buffer.
    pub fn record_events(&self, counts: EventCounts) {
        self.listen_events.fetch_add(counts.listen, Ordering::Relaxed);
        self.close_events.fetch_add(counts.close, Ordering::Relaxed);
        self.fork_events.fetch_add(counts.fork, Ordering::Relaxed);
        self.lost_events.fetch_add(counts.lost, Ordering::Relaxed);
    }

    /// Events read so far.
    #[must_use]
    pub fn events(&self) -> EventCounts {
        EventCounts {
            listen: self.listen_events.load(Ordering::Relaxed),
            close: self.close_events.load(Ordering::Relaxed),
            fork: self.fork_events.load(Ordering::Relaxed),
            lost: self.lost_events.load(Ordering::Relaxed),
        }
    }

    /// Counts one promotion of `group` (its address label, e.g. `127.0.0.1:8080`).
    pub fn record_promotion(&self, group: &str) {
        let mut promotions = self.promotions.lock().unwrap_or_else(PoisonError::into_inner);
        *promotions.entry(group.to_owned()).or_default() += 1;
    }

    /// Counts one refusal by a cap (`reason`: `instances`, `groups`, `generations`).
    pub fn record_refusal(&self, reason: &'static str) {
        let mut refusals = self.refusals.lock().unwrap_or_else(PoisonError::into_inner);
        *refusals.entry(reason).or_default() += 1;
    }

    /// Counts one listen event from a process that fails `rule` (`user`,
    /// `user_namespace`, `exe`, `cgroup`).
    pub fn record_untrusted(&self, rule: &'static str) {
        let mut untrusted = self.untrusted.lock().unwrap_or_else(PoisonError::into_inner);
        *untrusted.entry(rule).or_default() += 1;
    }

    /// Listen events from untrusted processes so far, per rule.
    #[must_use]
    pub fn untrusted(&self) -> BTreeMap<&'static str, u64> {
        self.untrusted.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Counts a group where a new generation was not ready in time.
    pub fn record_not_ready(&self) {
        self.not_ready.fetch_add(1, Ordering::Relaxed);
    }

    /// Groups so far where a new generation was not ready in time.
    #[must_use]
    pub fn not_ready(&self) -> u64 {
        self.not_ready.load(Ordering::Relaxed)
    }

    /// Refusals so far, per reason.
    #[must_use]
    pub fn refusals(&self) -> BTreeMap<&'static str, u64> {
        self.refusals.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Promotions so far, per group label.
    #[must_use]
    pub fn promotions(&self) -> BTreeMap<String, u64> {
        self.promotions.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

impl Default for DaemonStats {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupLabels {
    netns: u64,
    group: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PathLabels {
    netns: u64,
    group: String,
    path: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SocketLabels {
    netns: u64,
    group: String,
    pid: u32,
    fd: u32,
    role: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PromotionLabels {
    group: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// The program's counters as (`path` label, value).
fn paths(c: &Counters) -> [(&'static str, u64); 11] {
    [
        ("steered_active", c.steered_active),
        ("steered_canary", c.steered_canary),
        ("migrated", c.migrated),
        ("fallback_no_config", c.fallback_no_config),
        ("fallback_empty_slot", c.fallback_empty_slot),
        ("helper_error", c.helper_error),
        ("migrated_by_kernel", c.migrated_by_kernel),
        ("canary_to_active", c.canary_to_active),
        ("flow_kept_previous", c.flow_kept_previous),
        ("flow_to_active", c.flow_to_active),
        ("flow_table_full", c.flow_table_full),
    ]
}

/// Renders the OpenMetrics exposition text for one scrape ([`prometheus_text`]
/// derives the Prometheus text format from it).
///
/// `netstat` is the text of `/proc/net/netstat`; an empty string reads as zeros.
///
/// # Errors
/// Only when the encoder fails to write, which a `String` never does.
pub fn render(status: &Status, stats: &DaemonStats, netstat: &str) -> Result<String, std::fmt::Error> {
    let connections = Family::<PathLabels, Counter>::default();
    let active_pid = Family::<GroupLabels, Gauge>::default();
    let accept_queue = Family::<SocketLabels, Gauge>::default();
    let selected = Family::<SocketLabels, Counter>::default();
    let mut groups: i64 = 0;

    for ns in &status.namespaces {
        for g in &ns.groups {
            groups += 1;
            // The flow counters only where there are flows (UDP groups).
            let count = if g.udp.is_some() { 11 } else { 8 };
            for (path, value) in paths(&g.counters).into_iter().take(count) {
                let labels = PathLabels { netns: ns.netns, group: g.address.clone(), path };
                connections.get_or_create(&labels).inc_by(value);
            }
            if let Some(active) = g.sockets.iter().find(|s| s.role == "active") {
                let labels = GroupLabels { netns: ns.netns, group: g.address.clone() };
                active_pid.get_or_create(&labels).set(i64::from(active.pid));
            }
            for s in &g.sockets {
                let labels = SocketLabels {
                    netns: ns.netns,
                    group: g.address.clone(),
                    pid: s.pid,
                    fd: s.fd,
                    role: s.role.to_string(),
                };
                if let Some(queue) = s.accept_queue {
                    accept_queue.get_or_create(&labels).set(i64::from(queue));
                }
                selected.get_or_create(&labels).inc_by(s.selected);
            }
        }
    }

    let promotions = Family::<PromotionLabels, Counter>::default();
    for (group, count) in stats.promotions() {
        promotions.get_or_create(&PromotionLabels { group }).inc_by(count);
    }

    let refusals = Family::<ReasonLabels, Counter>::default();
    for reason in ["instances", "groups", "generations"] {
        refusals.get_or_create(&ReasonLabels { reason }).inc_by(0);
    }
    for (reason, count) in stats.refusals() {
        refusals.get_or_create(&ReasonLabels { reason }).inc_by(count);
    }

    let untrusted = Family::<ReasonLabels, Counter>::default();
    for reason in UNTRUSTED_RULES {
        untrusted.get_or_create(&ReasonLabels { reason }).inc_by(0);
    }
    for (reason, count) in stats.untrusted() {
        untrusted.get_or_create(&ReasonLabels { reason }).inc_by(count);
    }

    let migrate = Family::<ResultLabels, Counter>::default();
    let (success, failure) = migrate_req_counters(netstat);
    migrate.get_or_create(&ResultLabels { result: "success" }).inc_by(success);
    migrate.get_or_create(&ResultLabels { result: "failure" }).inc_by(failure);

    let events = Family::<KindLabels, Counter>::default();
    let counts = stats.events();
    events.get_or_create(&KindLabels { kind: "listen" }).inc_by(counts.listen);
    events.get_or_create(&KindLabels { kind: "close" }).inc_by(counts.close);
    events.get_or_create(&KindLabels { kind: "fork" }).inc_by(counts.fork);

    let uptime = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    uptime.set(stats.started.elapsed().as_secs_f64());
    let group_count = Gauge::<i64>::default();
    group_count.set(groups);

    let mut registry = Registry::with_prefix("steer");
    registry.register(
        "connections",
        "New connections the reuseport program handled, by the path each took",
        connections,
    );
    registry.register("promotions", "Promotions made by this daemon, per group", promotions);
    registry.register(
        "active_pid",
        "Pid of the process whose sockets receive the group's new connections",
        active_pid,
    );
    registry.register(
        "socket_accept_queue",
        "Connections waiting to be accepted on a steered socket",
        accept_queue,
    );
    registry.register("socket_selected", "New connections the program sent to a socket", selected);
    registry.register(
        "kernel_tcp_migrate_req",
        "Requests the kernel migrated from a closing listener, this daemon's netns (TcpExt TCPMigrateReq*)",
        migrate,
    );
    registry.register(
        "daemon_listener_events",
        "Events the daemon read from its tracepoints: listen, close, and forks of watched processes (0 when polling)",
        events,
    );
    let lost = Counter::<u64>::default();
    lost.inc_by(counts.lost);
    registry.register(
        "daemon_events_lost",
        "Listener events the daemon's source lost because its ring buffer was full; each loss makes it look at every matching group again",
        lost,
    );
    let not_ready = Counter::<u64>::default();
    not_ready.inc_by(stats.not_ready());
    registry.register(
        "daemon_not_ready",
        "Groups where a new generation did not pass the readiness gate within --ready-timeout, so it was not promoted and the active generation kept serving",
        not_ready,
    );
    registry.register(
        "daemon_refusals",
        "Processes (or, for instances, network namespaces) a cap kept the daemon from promoting, by reason",
        refusals,
    );
    registry.register(
        "daemon_untrusted",
        "Listen events from processes that passed --comm and --netns but fail a rule the operator named (--user, --exe, --cgroup, or another user namespace), by rule; none of them is steered",
        untrusted,
    );
    registry.register_with_unit("daemon_uptime", "Time since the daemon started", Unit::Seconds, uptime);
    // -1 until the event loop first goes round.
    let heartbeat = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    heartbeat.set(match stats.health(Instant::now()) {
        Health::Beating(age) | Health::Stale(age) => age.as_secs_f64(),
        Health::Starting => -1.0,
    });
    registry.register_with_unit(
        "daemon_heartbeat_age",
        "Time since the daemon's event loop last went round (-1: not started); /healthz fails past 10 s",
        Unit::Seconds,
        heartbeat,
    );
    registry.register("groups", "Steered reuseport groups", group_count);
    lock::register(&mut registry, crate::state::lock_waits());

    let mut out = String::new();
    text::encode(&mut out, &registry)?;
    Ok(out)
}

/// `(TCPMigrateReqSuccess, TCPMigrateReqFailure)` from the text of `/proc/net/netstat`,
/// where the `TcpExt:` line of names is followed by the `TcpExt:` line of values.
/// A counter that is missing (an older kernel) reads as zero.
#[must_use]
pub fn migrate_req_counters(netstat: &str) -> (u64, u64) {
    let mut lines = netstat.lines().filter_map(|l| l.strip_prefix("TcpExt:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else { return (0, 0) };
    let mut success = 0;
    let mut failure = 0;
    for (name, value) in names.split_whitespace().zip(values.split_whitespace()) {
        match name {
            "TCPMigrateReqSuccess" => success = value.parse().unwrap_or(0),
            "TCPMigrateReqFailure" => failure = value.parse().unwrap_or(0),
            _ => {}
        }
    }
    (success, failure)
}

#[cfg(test)]
#[path = "metrics_tests.rs"]
mod tests;
