//! The progressive canary's rules, scene by scene, against a scripted world:
//! a canary first, then the full promotion when due, unless the process exits,
//! an operator's command ends it, or a newer generation replaces it.
use std::time::{Duration, Instant};

use super::*;
use crate::{
    daemon::{
        Policy,
        core::{Config, Event},
        fake::{Fake, p},
        steerer::Completion,
    },
    ops::OpError,
    sockets::SocketError,
};

const FOR: Duration = Duration::from_secs(2);
const G: GroupId = GroupId { netns: 1, port: 80 };

fn core() -> Core {
    Core::new(Config {
        policy: Policy::Newest,
        ready_delay: Duration::ZERO,
        ports: vec![80],
        me: 4_000_000,
        canary: Some(Plan { weight: 25, duration: FOR }),
        ready_timeout: None,
    })
}

fn change(pid: u32, outcome: Outcome) -> Change {
    Change {
        group: "127.0.0.1:80".into(),
        pid,
        sockets: 1,
        first_slot: 0,
        changed: outcome.changed(),
        generation: 1,
        outcome,
        previous_pids: Vec::new(),
    }
}

/// a (started at 5) is active; b (10) and c (20) are newer generations.
fn world() -> Fake {
    Fake::with([p(1, "srv", 5, 5, &[80]), p(1, "srv", 10, 10, &[80]), p(1, "srv", 20, 20, &[80])])
}

fn listen(pid: u32) -> Event {
    Event::Listen { pid, port: 80, ktime_ns: u64::from(pid) }
}

/// `pid` listens at `t` and its canary step takes effect.
fn canaried(c: &mut Core, pid: u32, t: Instant, world: &Fake) -> Vec<Report> {
    c.observe(&[listen(pid)], t, world);
    let (mut d, _) = c.take_due(t, world);
    assert_eq!(d.len(), 1, "{d:?}");
    let d = d.remove(0);
    assert_eq!((d.action, d.pid), (Action::Canary { weight: 25 }, pid));
    c.settle(d, Ok(Done::Promoted(vec![change(pid, Outcome::Canary { weight: 25 })])), t, world)
}

fn completed(changes: Vec<Change>, left: Vec<u16>) -> Result<Done, StepError> {
    Ok(Done::Completed(Completion { changes, left }))
}

#[test]
fn a_new_generation_is_a_canary_first_and_is_promoted_fully_when_due() {
    let t = Instant::now();
    let world = world();
    let mut c = core();
    let r = canaried(&mut c, 10, t, &world);
    assert!(matches!(&r[..], [Report::Canaried { pid: 10, duration: FOR, .. }]), "{r:?}");
    assert_eq!(c.canaries()[&G].pid, 10);
    assert_eq!(c.next_due(), Some(t + FOR));
    assert!(c.take_due(t + FOR - Duration::from_millis(1), &world).0.is_empty(), "not before it is due");
    let (mut d, r) = c.take_due(t + FOR, &world);
    assert!(r.is_empty(), "{r:?}");
    assert_eq!((d[0].action, d[0].pid, d[0].scope.clone()), (Action::Complete, 10, vec![80]));
    let r = c.settle(d.remove(0), completed(vec![change(10, Outcome::Promoted)], vec![]), t + FOR, &world);
    assert!(matches!(&r[..], [Report::Completed { pid: 10, after: FOR, .. }]), "{r:?}");
    assert!(c.canaries().is_empty() && c.next_due().is_none());
}

#[test]
fn a_canary_is_abandoned_and_never_promoted_when_it_ends() {
    // (scene, the reports that end it, whether the pid is canaried again)
    let t = Instant::now();
    let half = t + FOR / 2;
    for scene in ["exits during the canary", "gone at completion", "rolled back", "replaced by c"] {
        let mut world = world();
        let mut c = core();
        canaried(&mut c, 10, t, &world);
        let ended = match scene {
            "exits during the canary" => {
                world.procs.remove(&10);
                let (d, r) = c.take_due(half, &world);
                assert!(d.is_empty(), "{scene}: {d:?}");
                r
            }
            "gone at completion" => {
                let (mut d, _) = c.take_due(t + FOR, &world);
                world.procs.remove(&10);
                let gone = OpError::Socket(SocketError::Vanished { pid: 10 }).into();
                c.settle(d.remove(0), Err(gone), t + FOR, &world)
            }
            "rolled back" => {
                let (mut d, _) = c.take_due(t + FOR, &world);
                c.settle(d.remove(0), completed(vec![], vec![80]), t + FOR, &world)
            }
            _ => {
                let r = canaried(&mut c, 20, half, &world);
                assert!(matches!(r[0], Report::Canaried { pid: 20, .. }), "{r:?}");
                r[1..].to_vec()
            }
        };
        let why = match scene {
            "exits during the canary" | "gone at completion" => Ended::Exited,
            "rolled back" => Ended::Operator,
            _ => Ended::Replaced { by: 20 },
        };
        assert!(
            matches!(&ended[..], [Report::CanaryEnded { pid: 10, port: 80, why: w }] if *w == why),
            "{scene}: {ended:?}"
        );
        // b is completed at no time; only c, when it is the canary, is.
        let later = t + FOR * 3;
        let (d, _) = c.take_due(later, &world);
        let completes: Vec<u32> = d.iter().filter(|d| d.action == Action::Complete).map(|d| d.pid).collect();
        assert_eq!(completes, if scene == "replaced by c" { vec![20] } else { vec![] }, "{scene}");
        if world.procs.contains_key(&10) {
            // Another event for b, or an adoption, does not bring it back.
            c.observe(&[listen(10)], later, &world);
            let (d, r) = c.take_due(later, &world);
            assert!(d.is_empty(), "{scene}: {d:?}");
            assert!(matches!(&r[..], [Report::NotAgain { pid: 10, port: 80 }]), "{scene}: {r:?}");
            let solo = Fake::with([p(1, "srv", 5, 5, &[80]), p(1, "srv", 10, 10, &[80])]);
            assert!(c.adopt(&solo, later, 1).is_empty(), "{scene}: adoption skips b");
        }
    }
}

#[test]
fn a_newer_generation_after_an_ended_canary_restarts_the_cycle() {
    let t = Instant::now();
    let world = world();
    let mut c = core();
    canaried(&mut c, 10, t, &world);
    let (mut d, _) = c.take_due(t + FOR, &world);
    c.settle(d.remove(0), completed(vec![], vec![80]), t + FOR, &world);
    let r = canaried(&mut c, 20, t + FOR, &world);
    assert!(matches!(&r[..], [Report::Canaried { pid: 20, .. }]), "{r:?}");
    assert_eq!(c.canaries()[&G].due, t + FOR * 2);
}

#[test]
fn a_canary_whose_process_forked_and_left_runs_on_with_the_child_holding_its_sockets() {
    let t = Instant::now();
    let mut world = world();
    world.procs.remove(&20);
    let mut c = core();
    canaried(&mut c, 10, t, &world);
    let (_, mut child) = p(1, "srv", 11, 11, &[]);
    child.listeners = world.procs[&10].listeners.clone();
    world.procs.insert(11, child);
    world.procs.remove(&10);
    let (d, r) = c.take_due(t + FOR / 2, &world);
    assert!(d.is_empty() && r.is_empty(), "{d:?} {r:?}");
    assert_eq!(c.canaries()[&G].pid, 11);
    let (d, _) = c.take_due(t + FOR, &world);
    assert_eq!((d[0].action, d[0].pid), (Action::Complete, 11), "the clock kept running");
    // Seen through the fork event instead, the child's step continues the same canary.
    let mut c = core();
    world.procs.insert(10, p(1, "srv", 10, 10, &[80]).1);
    canaried(&mut c, 10, t, &world);
    let r = canaried(&mut c, 11, t + FOR / 2, &world);
    assert!(matches!(&r[..], [Report::Canaried { pid: 11, .. }]), "not a replacement: {r:?}");
    assert_eq!((c.canaries()[&G].pid, c.canaries()[&G].due), (11, t + FOR));
}

#[test]
fn a_completion_waits_behind_new_work_for_its_group() {
    let t = Instant::now();
    let world = world();
    let mut c = Core::new(Config { ready_delay: FOR, ..core().config });
    c.observe(&[listen(10)], t, &world);
    let (mut d, _) = c.take_due(t + FOR, &world);
    let canary = Ok(Done::Promoted(vec![change(10, Outcome::Canary { weight: 25 })]));
    c.settle(d.remove(0), canary, t + FOR, &world);
    // c listens a little before b's canary is due, and waits out --ready-delay.
    c.observe(&[listen(20)], t + FOR * 2 - Duration::from_millis(100), &world);
    assert_eq!(c.next_due(), Some(t + FOR * 3 - Duration::from_millis(100)));
    assert!(c.take_due(t + FOR * 2, &world).0.is_empty(), "b's completion waits for c");
    let (d, _) = c.take_due(t + FOR * 3, &world);
    assert_eq!(
        d.iter().map(|d| (d.action, d.pid)).collect::<Vec<_>>(),
        vec![(Action::Canary { weight: 25 }, 20)]
    );
}

#[test]
fn a_completion_that_may_pass_is_tried_again_unless_a_newer_canary_came() {
    let t = Instant::now();
    let world = world();
    let locked = || -> StepError {
        OpError::Socket(SocketError::NoListeners { pid: 10, comm: "srv".into(), ports: String::new() }).into()
    };
    let mut c = core();
    canaried(&mut c, 10, t, &world);
    let (mut d, _) = c.take_due(t + FOR, &world);
    let r = c.settle(d.remove(0), Err(locked()), t + FOR, &world);
    assert!(matches!(&r[..], [Report::Retrying { pid: 10, tries: 1, .. }]), "{r:?}");
    let again = t + FOR + RETRY_AFTER;
    assert_eq!(c.next_due(), Some(again));
    let (mut d, _) = c.take_due(again, &world);
    assert_eq!((d[0].action, d[0].groups[0].1.tries), (Action::Complete, 1));
    // A newer canary lands while the retry is out: the retry is dropped.
    let retry = d.remove(0);
    canaried(&mut c, 20, again, &world);
    c.settle(retry, Err(locked()), again, &world);
    assert_eq!(c.canaries()[&G].pid, 20);
}

#[test]
fn a_step_that_made_no_canary_starts_no_clock() {
    // Adoption of the active generation, or one an operator's canary holds.
    let t = Instant::now();
    let world = world();
    for outcome in [Outcome::AlreadyActive, Outcome::HeldByOperator, Outcome::Promoted] {
        let mut c = core();
        let d = c.adopt(&world, t, 1).remove(0);
        assert_eq!(d.action, Action::Canary { weight: 25 });
        let r = c.settle(d, Ok(Done::Promoted(vec![change(20, outcome)])), t, &world);
        assert!(matches!(&r[..], [Report::Promoted { pid: 20, .. }]), "{outcome:?}: {r:?}");
        assert!(c.canaries().is_empty() && c.next_due().is_none(), "{outcome:?}");
    }
}

#[test]
fn at_start_the_ports_an_operators_command_set_without_this_generation_are_left_alone() {
    let t = Instant::now();
    let world = Fake::with([p(1, "srv", 10, 10, &[80, 443])]);
    let mut cfg = core().config;
    cfg.ports = vec![80, 443];
    let c = Core::new(cfg.clone());
    let d = c.adopt(&world, t, 1).remove(0);
    let (kept, r) = c.yield_to_operator(d.clone(), &[80]);
    let kept = kept.expect("443 is adopted");
    assert_eq!((kept.scope, kept.groups.len()), (vec![443], 1));
    assert!(matches!(&r[..], [Report::Yielded { pid: 10, port: 80 }]), "{r:?}");
    let (none, r) = c.yield_to_operator(d.clone(), &[80, 443]);
    assert!(none.is_none() && r.len() == 2);
    // Without --canary, adoption is as it was: the promote yields per group.
    let plain = Core::new(Config { canary: None, ..cfg });
    let (same, r) = plain.yield_to_operator(d.clone(), &[80]);
    assert_eq!((same, r.len()), (Some(d), 0));
}

#[test]
fn the_port_of_a_groups_label() {
    for (label, port) in [("127.0.0.1:80", Some(80)), ("[::1]:8443%2", Some(8443)), ("nonsense", None)] {
        assert_eq!(port_of_label(label), port, "{label}");
    }
}
