//! UDP reuseport groups: unbound reloads under dnsperf (`udp::unbound::`, real servers
//! under load, run one at a time with the other real-server tests), and flows of the
//! UDP test server across a handover (`udp::flows::`): flow affinity, stateless mode,
//! and the counters that prove the program ran.
use serde_json::Value;

use crate::common::World;

mod flows;
mod unbound;

/// The counters and fields of `steer status --json` these tests read, in one place.
mod names {
    pub const PROTOCOL: &str = "protocol";
    pub const UDP: &str = "udp";
    pub const STEERED_ACTIVE: &str = "steered_active";
    pub const FLOW_KEPT_PREVIOUS: &str = "flow_kept_previous";
    pub const FLOW_TABLE_FULL: &str = "flow_table_full";
    pub const FLOW_TO_ACTIVE: &str = "flow_to_active";
    /// `steer promote PID --udp-flows off`: stateless, every datagram to the active one.
    pub const FLOWS_OFF: [&str; 2] = ["--udp-flows", "off"];
}

/// The groups on `port` (of any protocol) in `steer status --json`.
fn groups_on(w: &World, port: u16) -> Vec<Value> {
    let status: Value = serde_json::from_str(&w.status_json()).expect("status --json parses");
    status["namespaces"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|ns| ns["groups"].as_array().into_iter().flatten())
        .filter(|g| g["port"] == port)
        .cloned()
        .collect()
}

/// The UDP group on `port` in `steer status --json` (panics when there is none).
fn udp_group(w: &World, port: u16) -> Value {
    let groups = groups_on(w, port);
    groups
        .iter()
        .find(|g| g[names::PROTOCOL] == names::UDP)
        .cloned()
        .unwrap_or_else(|| panic!("no UDP group on port {port} in {groups:#?}"))
}

/// One counter of the UDP group on `port`.
fn counter(w: &World, port: u16, name: &str) -> u64 {
    let group = udp_group(w, port);
    group["counters"][name].as_u64().unwrap_or_else(|| panic!("no counter {name} in {group:#}"))
}
