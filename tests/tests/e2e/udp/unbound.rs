//! unbound reloaded 20 times under dnsperf at a fixed query rate: without steer (the
//! baseline, printed: the old generation's closing socket drops what is queued on it)
//! and with `steer reload` (nothing lost). Each generation's answers are counted from
//! its exit statistics, and after each handover a TXT query is answered by the new one.
use steer_harness::dns_handover::{self, HandoverRun, Mode};

use super::{counter, names, udp_group};
use crate::common::{Scratch, World, steer_bin};

const PORT: u16 = 5353;
const HANDOVERS: usize = 20;

#[test]
fn twenty_unbound_handovers_under_dnsperf_without_steer_baseline() {
    let Some(w) = World::new("hudpdns0") else { return };
    let scratch = Scratch::new(&w);
    let run = HandoverRun::new(PORT, scratch.path());
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
    let Some(w) = World::new("hudpdns1") else { return };
    let scratch = Scratch::new(&w);
    let run = HandoverRun::new(PORT, scratch.path());
    let mode = Mode::Steered { steer: steer_bin(), state_dir: w.state_dir.clone() };
    let report = dns_handover::run(&w.ns, &run, &mode).expect("handovers with steer reload");
    eprintln!("steer reload, {HANDOVERS} handovers at {} q/s: {}", run.rate, report.summary());
    eprintln!("answers by generation: {:?}", report.answered);
    let (active, kept, moved) = (
        counter(&w, PORT, names::STEERED_ACTIVE),
        counter(&w, PORT, names::FLOW_KEPT_PREVIOUS),
        counter(&w, PORT, names::FLOW_TO_ACTIVE),
    );
    eprintln!(
        "counters: steered_active {active}, flow_kept_previous {kept}, flow_to_active {moved}; group {:#}",
        udp_group(&w, PORT)
    );
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
    // Every query took one of the program's steering paths: a new flow or one the
    // active generation keeps, one kept with the old generation until the release,
    // and one the release moved to the new generation.
    let steered = active + kept + moved;
    assert!(
        steered >= report.dnsperf.completed,
        "the program steered every query: {active} + {kept} + {moved}"
    );
    assert!(moved > 0, "the release moved the old generation's flows to the new one: {moved}");
}
