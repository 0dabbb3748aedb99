//! The demo's printout: both runs side by side, then the steered run's program counters,
//! `steer promote` timings and `steer status`.

use std::time::Duration;

use serde_json::Value;
use steer_harness::load::LoadReport;

use super::Outcome;
use crate::util::ms;

/// Width of the row labels.
const LABEL: usize = 24;
/// Width of each run's column.
const COLUMN: usize = 14;
/// The program's counters in the order worth reading; any others follow.
const COUNTERS: &[(&str, &str)] = &[
    ("steered_active", "new connections sent to the promoted generation"),
    ("migrated", "queued connections moved off a closing listener"),
    ("steered_canary", "new connections sent to a canary"),
    ("fallback_no_config", "left to the kernel: group not configured"),
    ("fallback_empty_slot", "left to the kernel: promoted socket gone"),
    ("helper_error", "left to the kernel: selection failed"),
    ("migrated_by_kernel", "queued connections the kernel moved (closing socket was active)"),
];

/// Prints the comparison table, the steered run's counters, timings and status.
pub fn print(plain: &Outcome, steered: &Outcome) {
    println!("{:LABEL$}{:>COLUMN$}{:>COLUMN$}", "", "without steer", "with steer");
    let count = |label: &str, get: fn(&LoadReport) -> u64| {
        println!("{label:LABEL$}{:>COLUMN$}{:>COLUMN$}", get(&plain.load), get(&steered.load));
    };
    println!("{:LABEL$}{:>COLUMN$}{:>COLUMN$}", "handovers", plain.handovers, steered.handovers);
    count("requests", |r| r.requests);
    count("ok", |r| r.ok);
    count("failed", LoadReport::failed);
    count("  connect errors", |r| r.connect_errors);
    count("  resets", |r| r.resets);
    count("  timeouts", |r| r.timeouts);
    count("  short replies", |r| r.short_replies);
    count("  bad replies", |r| r.bad_replies);
    count("  other errors", |r| r.other_errors);
    let rate = |label: &str, get: fn(&LoadReport) -> f64| {
        println!("{label:LABEL$}{:>COLUMN$.0}{:>COLUMN$.0}", get(&plain.load), get(&steered.load));
    };
    rate("ok requests/s", |r| r.rps);
    let millis = |label: &str, get: fn(&LoadReport) -> u64| {
        let (a, b) = (ms(get(&plain.load)), ms(get(&steered.load)));
        println!("{label:LABEL$}{a:>COLUMN$.2}{b:>COLUMN$.2}");
    };
    millis("latency p50 (ms)", |r| r.latency_us.p50);
    millis("latency p99 (ms)", |r| r.latency_us.p99);
    millis("latency max (ms)", |r| r.latency_us.max);
    println!(
        "(with steer, requests that reached the paused generation wait in its queue until they\n \
         migrate, which shows in the latency tail; without steer those requests were reset)"
    );
    if !plain.load.first_errors.is_empty() {
        println!("first failure without steer: {}", plain.load.first_errors[0]);
    }

    if let Some(counters) = &steered.counters {
        println!();
        println!("reuseport program counters, with steer (group 127.0.0.1:8080):");
        print_counters(counters);
    }
    if let Some(median) = median(&steered.promotes) {
        println!();
        println!(
            "steer promote wall time: median {:.1} ms over {} reloads",
            millis_of(median),
            steered.promotes.len()
        );
    }
    if let Some(first) = steered.first_promote {
        println!("first steer promote (also loads and pins the program): {:.1} ms", millis_of(first));
    }
    if let Some(status) = &steered.status {
        println!();
        println!("steer status, with steer, after the last reload:");
        print!("{status}");
    }
}

/// The known counters in order with what they mean, then any the program added since.
fn print_counters(counters: &Value) {
    let Some(map) = counters.as_object() else {
        println!("  (unreadable: {counters})");
        return;
    };
    for &(name, meaning) in COUNTERS {
        if let Some(value) = map.get(name) {
            println!("  {name:20}{:>10}  {meaning}", value.to_string());
        }
    }
    for (name, value) in map.iter().filter(|(name, _)| !COUNTERS.iter().any(|(known, _)| known == name)) {
        println!("  {name:20}{:>10}", value.to_string());
    }
}

fn millis_of(time: Duration) -> f64 {
    time.as_secs_f64() * 1e3
}

/// The median (the upper one for an even count), `None` when there is none.
fn median(times: &[Duration]) -> Option<Duration> {
    let mut sorted = times.to_vec();
    sorted.sort_unstable();
    sorted.get(sorted.len() / 2).copied()
}
