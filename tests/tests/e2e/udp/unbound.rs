//! unbound reloaded 20 times under dnsperf at a fixed query rate: without steer (the
//! baseline, printed: the old generation's closing socket drops what is queued on it)
//! and with `steer reload` (nothing lost). Each generation's answers are counted from
//! its exit statistics, and after each handover a TXT query is answered by the new one.
use std::path::PathBuf;

use steer_harness::dns_handover::{self, HandoverRun, Mode};

use super::{counter, names, udp_group, with_steer};
use crate::common::{World, steer_bin};

const PORT: u16 = 5353;
const HANDOVERS: usize = 20;

/// A scratch directory for configs, logs and the query file, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(w: &World) -> Scratch {
        let dir = PathBuf::from(format!("/tmp/{}", w.ns.name()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn twenty_unbound_handovers_under_dnsperf_without_steer_baseline() {
    let Some(w) = World::new("hudpdns0") else { return };
    let scratch = Scratch::new(&w);
    let run = HandoverRun::new(PORT, &scratch.0);
    let report = dns_handover::run(&w.ns, &run, &Mode::Unsteered).expect("handovers without steer");
    eprintln!("baseline (no steer), {HANDOVERS} handovers at {} q/s: {}", run.rate, report.summary());
    eprintln!("baseline answers by generation: {:?}", report.answered);
    assert!(report.dnsperf.sent > u64::from(run.rate), "dnsperf ran: {report:?}");
    let d = report.dnsperf;
    assert_eq!(d.completed + d.lost + d.interrupted, d.sent, "every query accounted for: {d:?}");
    assert_eq!(report.answered.len(), HANDOVERS + 1);
    assert_eq!(report.new_generation_answered, HANDOVERS, "{report:?}");
    // Every query is answered or lost, and the generations together answered the
    // completed ones (and the TXT checks).
    let answered: u64 = report.answered.iter().map(|(_, n)| n).sum();
    assert!(answered >= report.dnsperf.completed, "{report:?}");
}

#[test]
fn twenty_unbound_handovers_under_dnsperf_with_steer_reload_lose_nothing() {
    let Some(w) = with_steer("hudpdns1") else { return };
    let scratch = Scratch::new(&w);
    let run = HandoverRun::new(PORT, &scratch.0);
    let mode = Mode::Steered { steer: steer_bin(), state_dir: w.state_dir.clone() };
    let report = dns_handover::run(&w.ns, &run, &mode).expect("handovers with steer reload");
    eprintln!("steer reload, {HANDOVERS} handovers at {} q/s: {}", run.rate, report.summary());
    eprintln!("answers by generation: {:?}", report.answered);
    let paths = [names::STEERED_ACTIVE, names::FLOW_KEPT_PREVIOUS, names::FLOW_TO_ACTIVE];
    let counts: Vec<u64> = paths.iter().map(|name| counter(&w, PORT, name)).collect();
    eprintln!("counters {paths:?}: {counts:?}; group {:#}", udp_group(&w, PORT));
    assert!(report.dnsperf.sent > u64::from(run.rate), "dnsperf ran: {report:?}");
    assert_eq!(report.dnsperf.lost, 0, "no query lost with steer: {report:?}");
    let d = report.dnsperf;
    assert_eq!(
        d.completed + d.interrupted,
        d.sent,
        "every query answered but those in flight at the end: {d:?}"
    );
    assert_eq!(report.new_generation_answered, HANDOVERS, "{report:?}");
    assert!(report.answered.iter().all(|(_, n)| *n > 0), "every generation answered: {:?}", report.answered);
    // Each query took one of the program's steering paths: to the active generation,
    // kept with the previous one by its flow, or moved to the active one at a close.
    let steered: u64 = counts.iter().sum();
    assert!(steered >= report.dnsperf.completed, "the program steered every query: {paths:?} {counts:?}");
    assert!(counts[0] > 0 && counts[1] > 0, "flows were kept across handovers: {counts:?}");
}
