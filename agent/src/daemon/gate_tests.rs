//! The readiness gate's rules, one table or scene each, against a scripted world.
use std::time::{Duration, Instant};

use super::*;
use crate::daemon::{
    Policy,
    canary::Plan,
    core::{Config, Event, Pending, Trigger},
    fake::{Fake, p},
};

const TIMEOUT: Duration = Duration::from_secs(2);

fn core(canary: Option<Plan>) -> Core {
    Core::new(Config {
        policy: Policy::Newest,
        ready_delay: Duration::ZERO,
        ports: vec![80],
        me: 4_000_000,
        canary,
        ready_timeout: Some(TIMEOUT),
    })
}

fn listen(pid: u32) -> Event {
    Event::Listen { pid, port: 80, ktime_ns: 1 }
}

fn kinds(decisions: &[Decision]) -> Vec<(Action, u32)> {
    decisions.iter().map(|d| (d.action, d.pid)).collect()
}

/// A listen event, then the decisions and reports due at `t`.
fn listened(c: &mut Core, world: &Fake, pid: u32, t: Instant) -> (Vec<Decision>, Vec<Report>) {
    c.observe(&[listen(pid)], t, world);
    c.take_due(t, world)
}

#[test]
fn a_gated_promotion_goes_out_as_a_check_and_waits() {
    let t = Instant::now();
    let world = Fake::with([p(1, "srv", 10, 10, &[80]), p(1, "srv", 20, 20, &[80])]);
    let mut c = core(None);
    let (d, r) = listened(&mut c, &world, 20, t);
    assert_eq!(kinds(&d), vec![(Action::Check, 20)]);
    assert!(matches!(r[..], [Report::Waiting { pid: 20, timeout: TIMEOUT, .. }]), "{r:?}");
    assert_eq!(c.deadline(20), Some(t + TIMEOUT));
    c.checking(20, Marks::new());
    // Nothing is due while the check runs, nor after more events of the same process.
    c.observe(&[listen(20)], t, &world);
    let (d, _) = c.take_due(t + Duration::from_millis(50), &world);
    assert!(d.is_empty(), "{d:?}");
    assert_eq!(c.next_due(), Some(t + TIMEOUT + ANSWER_GRACE), "only a lost answer's guard while it runs");
    // An answer that never comes: given up well after the deadline.
    let (d, r) = c.take_due(t + TIMEOUT + ANSWER_GRACE, &world);
    assert!(d.is_empty());
    assert!(matches!(&r[..], [Report::NotReady { reason, .. }] if reason == "no check answered"), "{r:?}");
}

/// What follows an answer, by answer and time.
#[test]
fn answers_table() {
    let ms = Duration::from_millis;
    // (answer, answered after, decisions then due, the report)
    type Row = (Result<(), &'static str>, Duration, Vec<(Action, u32)>, &'static str);
    let table: [Row; 3] = [
        (Ok(()), ms(300), vec![(Action::Promote, 20)], "ready"),
        (Err("exit 1"), ms(300), vec![], "none"),
        (Err("exit 1"), TIMEOUT, vec![], "not ready"),
    ];
    for (answer, after, due, report) in table {
        let t = Instant::now();
        let world = Fake::with([p(1, "srv", 10, 10, &[80]), p(1, "srv", 20, 20, &[80])]);
        let mut c = core(None);
        listened(&mut c, &world, 20, t);
        c.checking(20, Marks::new());
        let at = t + after;
        let r = c.checked(20, answer.map_err(str::to_owned), at);
        let (d, _) = c.take_due(at, &world);
        assert_eq!(kinds(&d), due, "{answer:?} after {after:?}");
        match (report, &r[..]) {
            ("ready", [Report::Ready { pid: 20, checks: 1, .. }]) | ("none", []) => {}
            ("not ready", [Report::NotReady { pid: 20, port: 80, checks: 1, reason, .. }]) => {
                assert_eq!(reason, "exit 1");
            }
            _ => panic!("{answer:?} after {after:?}: {r:?}"),
        }
    }
}

#[test]
fn not_ready_is_asked_again_until_ready_then_promoted_once() {
    let t = Instant::now();
    let world = Fake::with([p(1, "srv", 10, 10, &[80]), p(1, "srv", 20, 20, &[80])]);
    let mut c = core(None);
    listened(&mut c, &world, 20, t);
    c.checking(20, Marks::new());
    c.checked(20, Err("503".into()), t);
    assert_eq!(c.next_due(), Some(t + CHECK_EVERY));
    let (d, _) = c.take_due(t + CHECK_EVERY, &world);
    assert_eq!(kinds(&d), vec![(Action::Check, 20)]);
    c.checking(20, Marks::new());
    let at = t + CHECK_EVERY * 2;
    assert!(matches!(c.checked(20, Ok(()), at)[..], [Report::Ready { checks: 2, .. }]));
    let (d, _) = c.take_due(at, &world);
    assert_eq!(kinds(&d), vec![(Action::Promote, 20)]);
    assert!(c.passed(20));
    assert!(c.take_due(at + TIMEOUT, &world).0.is_empty(), "promoted once, nothing left waiting");
}

#[test]
fn a_process_not_ready_in_time_is_never_promoted_until_it_leaves() {
    let t = Instant::now();
    let mut world = Fake::with([p(1, "srv", 10, 10, &[80]), p(1, "srv", 20, 20, &[80])]);
    let mut c = core(None);
    listened(&mut c, &world, 20, t);
    c.checking(20, Marks::new());
    c.checked(20, Err("503".into()), t + TIMEOUT);
    // Later events for it, and adoption after lost events, leave it alone.
    let (d, r) = listened(&mut c, &world, 20, t + TIMEOUT);
    assert!(d.is_empty() && matches!(r[..], [Report::NotAgain { pid: 20, .. }]), "{d:?} {r:?}");
    assert_eq!(kinds(&c.adopt(&world, t, 1)), vec![], "adoption skips it too");
    // A pid reused by another process is a new generation.
    world.procs.insert(20, p(1, "srv", 30, 20, &[80]).1);
    c.prune_watched(t + TIMEOUT * 2, &world);
    assert_eq!(kinds(&listened(&mut c, &world, 20, t + TIMEOUT).0), vec![(Action::Check, 20)]);
}

#[test]
fn the_deadline_passes_with_the_check_unanswered_or_between_checks() {
    let t = Instant::now();
    let world = Fake::with([p(1, "srv", 20, 20, &[80])]);
    let mut c = core(None);
    listened(&mut c, &world, 20, t);
    c.checking(20, Marks::new());
    c.checked(20, Err("refused".into()), t + TIMEOUT - Duration::from_millis(10));
    assert_eq!(c.next_due(), Some(t + TIMEOUT), "the last check is at the deadline, not after");
    let (d, r) = c.take_due(t + TIMEOUT, &world);
    assert!(d.is_empty());
    assert!(matches!(&r[..], [Report::NotReady { reason, .. }] if reason == "refused"), "{r:?}");
}

/// What ends a wait, by what happened while it ran.
#[test]
fn ends_of_a_wait_table() {
    let t = Instant::now();
    for scene in ["newer generation", "process left"] {
        let mut world =
            Fake::with([p(1, "srv", 10, 10, &[80]), p(1, "srv", 20, 20, &[80]), p(1, "srv", 30, 30, &[80])]);
        let mut c = core(None);
        listened(&mut c, &world, 20, t);
        c.checking(20, Marks::new());
        let (d, r) = match scene {
            "newer generation" => listened(&mut c, &world, 30, t),
            _ => {
                world.procs.remove(&20);
                c.take_due(t, &world)
            }
        };
        let expected = if scene == "newer generation" { vec![(Action::Check, 30)] } else { vec![] };
        assert_eq!(kinds(&d), expected, "{scene}");
        assert!(matches!(r[..], [Report::NoLongerWaiting { pid: 20, port: 80, .. }, ..]), "{scene}: {r:?}");
        // Its answer, coming late, changes nothing.
        assert!(c.checked(20, Ok(()), t).is_empty(), "{scene}");
        assert!(!c.gating.waiting().contains_key(&20), "{scene}");
    }
}

#[test]
fn a_daemonising_server_that_forks_and_exits_while_it_waits_hands_the_wait_to_its_child() {
    let t = Instant::now();
    let mut world = Fake::with([p(1, "srv", 10, 10, &[80]), p(1, "srv", 20, 20, &[80])]);
    let mut c = core(None);
    listened(&mut c, &world, 20, t);
    c.checking(20, Marks::new());
    // 20 forks 21, which holds its listener, and exits.
    let (pid, mut child) = p(1, "srv", 21, 21, &[]);
    child.listeners = world.procs[&20].listeners.clone();
    world.procs.insert(pid, child);
    world.procs.remove(&20);
    let (d, r) = c.take_due(t, &world);
    assert!(d.is_empty() && matches!(r[..], [Report::NoLongerWaiting { pid: 20, .. }]), "{d:?} {r:?}");
    assert_eq!(c.next_due(), Some(t), "the group is due again at once");
    let (d, r) = c.take_due(t, &world);
    assert_eq!(kinds(&d), vec![(Action::Check, 21)], "{r:?}");
    assert!(matches!(r[..], [Report::Waiting { pid: 21, .. }]), "{r:?}");
}

/// Whether a promotion that passed the gate gives way, by the operator marks
/// before and after the wait (port 80's mark; 0: the daemon set the group).
#[test]
fn operator_table() {
    for (before, after, promoted) in [(0, 0, true), (0, 7, false), (7, 7, true), (7, 9, false), (7, 0, true)]
    {
        let t = Instant::now();
        let world = Fake::with([p(1, "srv", 10, 10, &[80]), p(1, "srv", 20, 20, &[80])]);
        let mut c = core(None);
        listened(&mut c, &world, 20, t);
        c.checking(20, Marks::from([(80, before)]));
        c.checked(20, Ok(()), t);
        let (mut d, _) = c.take_due(t, &world);
        let (d, r) = c.operator_moved(d.remove(0), &Marks::from([(80, after)]));
        assert_eq!(d.is_some(), promoted, "{before} -> {after}");
        assert_eq!(r.is_empty(), promoted, "{before} -> {after}: {r:?}");
        assert!(!c.passed(20));
    }
}

#[test]
fn with_a_canary_the_gate_comes_first_then_the_canary() {
    let t = Instant::now();
    let world = Fake::with([p(1, "srv", 10, 10, &[80]), p(1, "srv", 20, 20, &[80])]);
    let mut c = core(Some(Plan { weight: 25, duration: Duration::from_secs(5) }));
    let (d, _) = listened(&mut c, &world, 20, t);
    assert_eq!(kinds(&d), vec![(Action::Check, 20)]);
    c.checking(20, Marks::new());
    c.checked(20, Ok(()), t);
    assert_eq!(kinds(&c.take_due(t, &world).0), vec![(Action::Canary { weight: 25 }, 20)]);
}

#[test]
fn adoption_at_start_waits_for_the_gate_too() {
    let t = Instant::now();
    let world = Fake::with([p(1, "srv", 10, 10, &[80]), p(1, "srv", 20, 20, &[80])]);
    let mut c = core(None);
    let adopted = c.adopt(&world, t, 1);
    assert_eq!(kinds(&adopted), vec![(Action::Promote, 20)]);
    let (d, r) = c.admit(adopted[0].clone(), t, &world);
    assert_eq!(d.map(|d| (d.action, d.pid)), Some((Action::Check, 20)));
    assert!(matches!(r[..], [Report::Waiting { pid: 20, .. }]));
    // Already active where it listens: nothing to wait for.
    let (d, r) = core(None).admit_adopted(adopted[0].clone(), &[80], t, &world);
    assert_eq!(d.map(|d| d.action), Some(Action::Promote));
    assert!(r.is_empty());
    // Held by the operator at start: nothing to check (the core's rule for the canary, too).
    let held = c.yield_to_operator(adopted[0].clone(), &[80]);
    assert!(held.0.is_none() && matches!(held.1[..], [Report::Yielded { pid: 20, port: 80 }]));
}

#[test]
fn completions_and_reattaches_pass_the_gate_untouched() {
    let t = Instant::now();
    let world = Fake::with([p(1, "srv", 20, 20, &[80])]);
    let mut c = core(None);
    for action in [Action::Complete, Action::Reattach] {
        let pending =
            Pending { due: t, ktime_ns: 1, pid: 20, tries: 0, fallbacks: 0, trigger: Trigger::Listen };
        let group = crate::daemon::core::GroupId { netns: 1, port: 80 };
        let d = Decision {
            action,
            pid: 20,
            scope: vec![80],
            groups: vec![(group, pending)],
            trigger: Trigger::Listen,
            ktime_ns: 1,
        };
        let (out, r) = c.admit(d.clone(), t, &world);
        assert_eq!(out, Some(d));
        assert!(r.is_empty() && c.gating.waiting().is_empty());
    }
}
